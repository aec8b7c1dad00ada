"""Where a study lives: Optuna's storage (a journal file or a database URL) and MLflow's
tracking store (an SQLite database under the output folder, or a server), with their set-up.

The embedded stores survive the usual accidents of a long study:

- the tracking database is built aside and moved into place whole, so a worker killed while
  MLflow creates its tables leaves no half-built database (one left by an older version is
  recognised and named, with how to recover);
- a journal whose last record a full disk tore is cut back to its last whole record (and one
  where the next append joined such a fragment is mended), a copy of the file kept first;
- a worker that waits for the set-up lock says for whom, and gives up after a while;
- finished stores in a read-only folder can be read (from a private copy), and a study asked to
  write there stops at once with one line.
"""
