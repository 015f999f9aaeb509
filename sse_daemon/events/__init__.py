"""Events and their schema, and the one check every value passes where it enters."""
