"""The HTTP edge every port shares: listener, access guard, auth, passwords, CORS, header safety, TLS."""
