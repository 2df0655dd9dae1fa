"""Text-risk rules for OCR'd text: contact details that pull buyers off-platform, and prohibited words.

Sellers evade plain regexes ("138 1234 5678", "１３８…", "幺三八…", "薇信：abc123", "abc艾特qq点com"), and
each team needs its own cues and word lists. So the code here holds only the generic mechanics and TOML
rule files hold the data:

- :mod:`~imgaudit.rules.normalise`: text folded for matching, with a map back to the original characters;
- :mod:`~imgaudit.rules.numbers`: number runs read through separators, numerals and homoglyphs;
- :mod:`~imgaudit.rules.compile`: rule files merged, validated and compiled;
- :mod:`~imgaudit.rules.matcher`: :class:`~imgaudit.rules.matcher.TextRules`, which scans text with them
  (cue windows, negative contexts, overlap resolution, word lists).

The built-in ``data/contact.toml`` is always loaded first and documents the format at its top; files
given to ``TextRules.load`` apply on top of it, in order. In short::

    [sets]
    line = ["line id", "加line"]           # named word lists, used as "@line"

    [[pattern]]                            # a regex over the normalised text
    name = "line"                          # unique; a later file with the same name updates that rule
    kind = "line"
    cues = ["@line"]                       # must start right after a cue (gap: spaces, ：, 号 …)
    pattern = '[a-z][a-z0-9._-]{3,19}'
    severity = "review"

    [[number]]                             # a rule over number runs (evasions already undone)
    name = "qq"
    severity = "review"                    # only change the built-in QQ rule's severity

    [[words]]
    category = "drugs"
    words = ["冰毒", "k粉"]
    file = "drugs.txt"                     # relative to the rule file; one per line, '#' comments

Word files given to ``load`` are lists whose category is the file stem, severity "violate". A mistake in
a rule file raises :class:`~imgaudit.errors.ConfigError` naming the file and the rule.
"""
