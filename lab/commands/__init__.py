"""The lab's command groups: each module adds its commands to the parser (add_commands) and
implements them; lab/cli.py puts them together and owns the one exit path."""
