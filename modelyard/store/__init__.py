"""The prediction store: a model's batch predictions, the runs that wrote them and its
quality tables, in one database (``connection``), its tables and their contract with the
declaration (``tables``), the run ledger (``runs``) and the predictions' rows
(``predictions``); ``databases`` reads the database URLs declarations write."""
