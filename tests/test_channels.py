"""Channel grouping (BRIEF §3): every rule, the order between them, and the rules-file checks."""

import pytest
from chispa import assert_df_equality

from touchpoint.core.channels import ChannelRulesError, load_rules, with_channel

COLUMNS = ("case string, event_type string, campaign_source string, campaign_medium string, campaign_name string, "
           "campaign_term string, campaign_content string, referrer string, page_url string")
SHOP = "https://shop.example/p"

# (case, event_type, source, medium, name, referrer, page_url, expected channel)
CASES = [
    ("paid search", "page_view", " Google ", "CPC", "spring", None, SHOP, "paid_search"),
    ("paid search ppc bing", "ad_click", "bing", "ppc", None, None, None, "paid_search"),
    ("paidsearch yandex", "page_view", "yandex", "paidsearch", None, None, SHOP, "paid_search"),
    ("source host is not a name", "page_view", "google.com", "cpc", None, None, SHOP, "direct"),
    ("paid social", "ad_click", "Facebook", "paid", None, None, None, "paid_social"),
    ("cpc on social is paid social", "ad_click", "x", "cpc", None, None, None, "paid_social"),
    ("paidsocial", "page_view", "tiktok", "paidsocial", None, None, SHOP, "paid_social"),
    ("display", "ad_click", "dv360", "display", None, None, None, "display"),
    ("banner", "page_view", "google", "Banner", None, None, SHOP, "display"),
    ("cpm on search engine", "page_view", "google", "cpm", None, None, SHOP, "display"),
    ("email medium", "page_view", "newsletter", "email", None, None, SHOP, "email"),
    ("email click without campaign", "email_click", None, None, None, None, None, "email"),
    ("email open", "email_open", None, None, None, "https://www.google.com/", None, "email"),
    ("affiliate", "page_view", "partner", "affiliate", None, None, SHOP, "affiliate"),
    ("social medium", "page_view", "facebook", "social", None, None, SHOP, "organic_social"),
    ("social referrer", "page_view", None, None, None, "https://l.facebook.com/x", SHOP, "organic_social"),
    ("social referrer label", "page_view", None, None, None, "https://m.reddit.com/r", SHOP, "organic_social"),
    ("search referrer www", "page_view", None, None, None, "https://www.google.com/search?q=x", SHOP,
     "organic_search"),
    ("search referrer ccTLD", "page_view", None, None, None, "https://google.co.uk/", SHOP, "organic_search"),
    ("search referrer yandex.ru", "page_view", None, None, None, "https://yandex.ru/?q", SHOP, "organic_search"),
    ("only last label matches", "page_view", None, None, None, "https://search.example.google/", SHOP, "referral"),
    ("campaign blocks organic", "page_view", "news", "article", None, "https://www.google.com/", SHOP, "direct"),
    ("term alone is a campaign", "page_view", None, None, None, "https://www.google.com/", SHOP, "organic_search"),
    ("referral", "page_view", None, None, None, "https://blog.example.org/post", SHOP, "referral"),
    ("same host is internal", "page_view", None, None, None, "https://www.shop.example/cart", SHOP, "direct"),
    ("same host without www", "page_view", None, None, None, "https://shop.example/cart",
     "https://www.shop.example/p", "direct"),
    ("no page_url: external", "ad_click", None, None, None, "https://shop.example/cart", None, "referral"),
    ("no referrer", "page_view", None, None, None, None, SHOP, "direct"),
    ("impression no campaign", "ad_impression", None, None, None, None, None, "direct"),
    ("unknown medium", "page_view", "google", "organic", None, None, SHOP, "direct"),
]


def test_every_rule_in_order(spark):
    rows = [(c, t, s, m, n, None, None, r, p) for c, t, s, m, n, r, p, _ in CASES]
    # a campaign with only a term set still counts as a campaign
    rows = [row if row[0] != "term alone is a campaign" else (*row[:5], "kw", None, *row[7:]) for row in rows]
    events = spark.createDataFrame(rows, COLUMNS)
    with_channels = events.transform(with_channel(load_rules()))
    assert with_channels.columns == [*events.columns, "channel"]  # the rules' helper columns are gone
    actual = with_channels.select("case", "channel")
    expected = spark.createDataFrame(
        [(c, ch if c != "term alone is a campaign" else "direct") for c, *_, ch in CASES], "case string, channel string"
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_custom_rules_file_changes_grouping(spark, tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "search_engines: [google]\nsocial_networks: [mastodon]\n"
        "rules:\n  - channel: podcast\n    when: {source_in: [spotify]}\n"
        "  - channel: organic_social\n    when: {no_campaign: true, referrer_is: social_network}\n"
        "default: other\n"
    )
    events = spark.createDataFrame(
        [("a", "page_view", "Spotify", None, None, None, None, None, SHOP),
         ("b", "page_view", None, None, None, None, None, "https://mastodon.social/@x", SHOP),
         ("c", "page_view", None, None, None, None, None, "https://l.facebook.com/", SHOP)], COLUMNS)
    actual = {r.case: r.channel for r in events.transform(with_channel(load_rules(rules_file))).collect()}
    assert actual == {"a": "podcast", "b": "organic_social", "c": "other"}


@pytest.mark.parametrize("body, message", [
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, when: {medium_is: [a]}}]\ndefault: d\n",
     "rules[0]: unknown condition ['medium_is']"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x}]\ndefault: d\n",
     "rules[0]: needs 'channel' and exactly one of 'when'"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, when: {referrer_is: web}}]\ndefault: d\n",
     "rules[0]: referrer_is must be one of"),
    ("search_engines: []\nrules: []\ndefault: d\n", "missing key 'social_networks'"),
    # types YAML accepts that no rule can mean (they were taken as they came: 'google' as six letters)
    ("search_engines: google\nsocial_networks: []\nrules: []\ndefault: d\n",
     "search_engines must be a list of names, e.g. [google, bing]"),
    ("search_engines: [null]\nsocial_networks: []\nrules: []\ndefault: d\n", "search_engines must be a list of names"),
    ("search_engines: []\nsocial_networks: []\nrules:\ndefault: d\n", "rules must be a list of rules"),
    ("search_engines: []\nsocial_networks: []\nrules: []\ndefault: null\n", "default must be a channel name"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: null, when: {medium_in: [a]}}]\ndefault: d\n",
     "rules[0]: channel must be a name, e.g. paid_search"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, when: {medium_in: cpc}}]\ndefault: d\n",
     "rules[0]: medium_in must be a list of names, e.g. medium_in: [a, b]"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, when: {no_campaign: 'false'}}]\ndefault: d\n",
     "rules[0]: no_campaign can only be true"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, any: []}]\ndefault: d\n",
     "rules[0]: 'any' must be a non-empty list of conditions"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, when: {}}]\ndefault: d\n",
     "rules[0]: a condition must be a non-empty mapping"),
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: x, when: null}]\ndefault: d\n",
     "rules[0]: a condition must be a non-empty mapping"),
    # the Markov chain splits paths joined by ' > ': 'paid > social' became two channels
    ("search_engines: []\nsocial_networks: []\nrules: [{channel: paid > social, when: {medium_in: [a]}}]\n"
     "default: d\n", "rules[0]: channel 'paid > social' cannot hold '>' (paths join channels with ' > ')"),
    ("search_engines: []\nsocial_networks: []\nrules: []\ndefault: a>b\n",
     "default: a channel name cannot hold '>'"),
])
def test_bad_rules_file_names_the_rule_and_fix(tmp_path, body, message):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(body)
    with pytest.raises(ChannelRulesError, match=rf"{rules_file}: .*") as error:
        load_rules(rules_file)
    assert message in str(error.value)


def test_url_host_is_lowercased_without_one_leading_www(spark):
    from pyspark.sql import functions as F

    from touchpoint.core.channels import url_host

    expected = {
        "https://www.shop.example/p": "shop.example",
        "https://WWW.Shop.Example/p?q=1": "shop.example",
        "https://wwwshop.example/": "wwwshop.example",  # no dot after www: part of the name
        "https://www.www.a.example/": "www.a.example",  # one prefix only
        "https://shop.www.example/": "shop.www.example",  # www. inside is kept
        "https://www./": None,  # nothing left
        "not a url": None,
        None: None,
        # the host of a URL a strict URI parser refuses (raw space, pipe, template, non-ASCII)
        "https://www.google.com/search?q=red shoes": "google.com",
        "https://l.facebook.com/l.php?u=a|b": "l.facebook.com",
        "https://blog.example.org/?kw={keyword}": "blog.example.org",
        "https://Bücher.example/": "bücher.example",
        # userinfo, port and an IPv6 literal are not the host's; no scheme and authority, no host
        "https://user:pa@ss@Shop.Example:8443/p": "shop.example",
        "http://[2001:db8::1]:80/": "[2001:db8::1]",
        "www.google.com/search": None,
        "mailto:a@google.com": None,
        "https:///path": None,
    }
    urls = spark.createDataFrame([(url,) for url in expected], "url string")
    hosts = urls.select("url", url_host(F.col("url")).alias("host")).collect()
    assert {row.url: row.host for row in hosts} == expected
