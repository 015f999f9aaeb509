"""What operators read and run: the admin listener, figures, log observers, the probe."""
