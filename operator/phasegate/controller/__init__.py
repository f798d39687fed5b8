"""Layer 5: the kopf operator. Thin: read, call the policy, write status, apply children."""
