"""amzguard: a milter that stops a web shop's MTA from mailing Amazon buyers what Amazon forbids."""

__version__ = "0.1.0"
