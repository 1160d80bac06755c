#!/usr/bin/env python
"""Django's command-line utility; starts the embedded servers first when a command needs them."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")
    from cryptomon.bootstrap import prepare

    prepare(sys.argv)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
