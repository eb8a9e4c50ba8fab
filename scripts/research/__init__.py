"""Research code used by the study scripts and their tests, not by the tool."""
