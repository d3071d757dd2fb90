"""Integrations with other systems (Ray Train, ...). Nothing in fulmen's core imports them."""
