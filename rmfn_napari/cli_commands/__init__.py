"""One module per ``rmfn`` sub-command; each defines ``register(subparsers)``."""
