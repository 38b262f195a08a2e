"""Batch jobs over the lake. Each job has pure transforms and a run() edge."""
