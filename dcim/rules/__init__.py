"""Rule engine: derived rack metrics, rules, alarm state machine and store, actions."""
