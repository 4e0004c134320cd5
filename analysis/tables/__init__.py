"""Result tables (TSV for machines, Markdown for people) and figures."""
