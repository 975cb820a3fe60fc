"""The command line. Only this package prints; everything else returns data."""
