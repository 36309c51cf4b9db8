"""One module per ``userip`` subcommand: each defines ``add_parser`` and ``run``."""
