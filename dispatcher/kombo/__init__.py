"""The Kombo boundary: the API client, Kombo's order and result models, packages.

Everything that comes through here is attacker-controlled until parsed and bounded."""
