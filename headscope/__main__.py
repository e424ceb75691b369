"""`python -m headscope ...`: the command line, also as torchrun launches it (`torchrun ... -m headscope`)."""

from headscope.cli import main

main()
