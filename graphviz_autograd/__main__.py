"""``python -m graphviz_autograd ...`` runs the command line."""
from graphviz_autograd.cli import main

main()
