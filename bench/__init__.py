"""Benchmarks: amzguard on a real Postfix (pipeline.py) and the policy alone (policy.py)."""
