"""Tests for depth_node.text: message strings made safe for log lines."""

import numpy as np

from depth_node.text import MAX_CHARS, shorten, shorten_values


def test_short_clean_strings_read_as_their_repr():
    assert shorten('nv12') == "'nv12'"
    assert shorten('') == "''"
    assert shorten(5) == '5'


def test_long_strings_are_cut_and_say_their_length():
    text = shorten('a' * 100_000)
    assert text == repr('a' * MAX_CHARS) + '... (100000 chars)'


def test_control_characters_are_escaped():
    for raw in ('\x1b[31mred', 'two\nlines', 'nul\x00', 'bell\x07', '\u202eevil'):
        text = shorten(raw)
        assert text.isprintable(), text
        assert raw not in text


def test_every_result_is_bounded():
    worst = '\x00' * 10_000
    assert len(shorten(worst)) <= 4 * MAX_CHARS + 24
    assert len(shorten(b'\xff' * 10_000)) <= 4 * MAX_CHARS + 24

    class Hostile:
        def __repr__(self):
            raise RuntimeError('no')
    assert 'repr failed' in shorten(Hostile())


def test_lists_keep_their_first_values_and_count():
    assert shorten_values([0.1, 0.2]) == '[0.1, 0.2]'
    assert shorten_values(np.arange(1000.0)) == (
        '[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, ...] (1000 values)')
    assert shorten_values(['x', 'y' * 100]).endswith("... (100 chars)]")
