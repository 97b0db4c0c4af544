"""`python -m vitkit …` (and `accelerate launch -m vitkit train …`)."""

from vitkit.cli import main

main()
