"""greet: a tiny command-line tool, the subject of the orch example workstream."""
