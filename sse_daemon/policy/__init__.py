"""Pure decisions the daemon applies: rate limits, connection budgets, reconnect storms, secrets out of URLs."""
