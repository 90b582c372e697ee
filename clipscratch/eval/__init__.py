"""The evaluation suite: every method works on cached features through the same model API."""
