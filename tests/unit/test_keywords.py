"""engine/keywords.py: what a destination that refuses keywords is sent, and what is reported."""
from migrator.engine.keywords import KeywordRefusal, keywords_of, lost_keywords_reason, system_flags


def test_keywords_are_the_flags_without_a_backslash():
    flags = ("$Forwarded", "\\Seen", "NonJunk", "\\Flagged")
    assert keywords_of(flags) == ("$Forwarded", "NonJunk")
    assert system_flags(flags) == ("\\Seen", "\\Flagged")


def test_everything_is_sent_until_a_refusal_is_seen_then_only_system_flags():
    k = KeywordRefusal()
    flags = ("$Label1", "\\Answered")
    assert k.keep(flags) == flags and k.lost(flags) == () and k.reason is None
    k.learn("BAD APPEND Unrecognized flag")
    k.learn("a later, different answer")  # the first refusal is the one reported
    assert k.keep(flags) == ("\\Answered",)
    assert k.lost(flags) == ("$Label1",)
    assert k.reason == "BAD APPEND Unrecognized flag"


def test_the_reason_names_the_lost_keywords_and_the_servers_answer():
    text = lost_keywords_reason(["NonJunk", "$Forwarded"], "BAD APPEND Unrecognized flag")
    assert text == ("copied without its keyword(s) $Forwarded NonJunk: the destination refuses keywords "
                    "(BAD APPEND Unrecognized flag)")
