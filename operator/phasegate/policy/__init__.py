"""Layer 2: pure decisions. Functions of (spec, status, observation, now); no I/O, no clock."""
