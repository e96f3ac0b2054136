"""``python -m twinsight.cli``: the ``twinsight`` command.

Lightning re-runs the command it was started with once per further device of a DDP
launch (``--devices N``), so this is also how those processes start when the command
was ``python -m twinsight.cli``.
"""

from twinsight.cli import main

main()
