"""Local service control: JVM jars, the Kafka broker and a Spark standalone cluster."""
