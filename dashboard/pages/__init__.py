"""One module per page, each with its layout and callbacks."""
