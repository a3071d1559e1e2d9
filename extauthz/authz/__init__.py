"""Authorization: a route's policy over (request, identity, route parameters)."""
