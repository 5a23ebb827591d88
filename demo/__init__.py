"""The ``make demo`` story: a throwaway Postfix with amzguard (run as ``python -m demo``)."""
