"""`harness bench`: timing the backends side by side, the peer libraries, the profile."""
