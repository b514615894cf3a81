"""One-command reproduction of the DLHub paper's evaluation (section V) on this machine.

    python -m loadtest.paper [--quick] [--repeats N] [--out loadtest/results/paper]

Each experiment has its own module; ``__main__`` runs them against fresh embedded stacks (``dlhub up``),
takes medians over the repeats and writes ``paper.json``, ``targets.md`` and one PNG per figure.
See docs/performance.md.
"""
