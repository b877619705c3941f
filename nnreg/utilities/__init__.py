"""Small helpers shared by every stage: user-facing errors, atomic file writes, logging."""
