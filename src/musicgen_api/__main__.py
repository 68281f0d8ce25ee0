"""`python -m musicgen_api` runs the console command."""

from musicgen_api.cli import main

main()
