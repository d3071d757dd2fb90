"""Small helpers with no knowledge of the rest of fulmen (torch and the stdlib only)."""
