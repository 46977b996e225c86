"""Keys, accounts, money and usage: everything that needs the database.

Money is integers of micro-units of the account currency (1 USD = 1_000_000) and moves only
through `ledger.py`, each movement one transaction with a conditional UPDATE, so balances stay
exact under any interleaving of requests.
"""
