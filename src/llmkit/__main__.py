"""`python -m llmkit`: the `llmkit` command."""

from llmkit.cli import main

if __name__ == "__main__":  # imported (by a tool listing modules, say) it runs nothing
    main()
