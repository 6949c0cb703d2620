"""The prediction store: its tables and runs (``tables``), and the database URLs that
declarations write (``databases``)."""
