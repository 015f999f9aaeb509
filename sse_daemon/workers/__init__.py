"""Worker processes that share a sink's port, and the pipe that feeds them."""
