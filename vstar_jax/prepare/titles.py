"""MiniOneRec's item title rules and the cleaning of the item-file text fields.

An item is kept only with a usable title, because every prompt and every catalogue line names
items by title: no title, an HTML `<span id` fragment (scraping debris), a title of at most one
character or of more than 20 space-separated words all drop the item.
"""

from __future__ import annotations

import html
import re

MAX_TITLE_WORDS = 20
_TAG = re.compile(r'<[^>]+>')
_SPACE = re.compile(r'\s+')
_LINE_BREAKING = re.compile(r'[\t\n\r\v\f\x1c-\x1e\x85\u2028\u2029]')

# Why a title was refused; stats.json counts items per reason.
NO_TITLE, HTML_SPAN, TOO_SHORT, TOO_LONG = 'no_title', 'html_span', 'too_short', 'too_long'


def clean_title(raw) -> tuple[str | None, str | None]:
  """Raw metadata title -> (title, None) if usable, else (None, reason).

  `&quot;` and `&amp;` are unescaped, then spaces and double quotes are stripped from both ends;
  word count is `len(title.split(' '))`, so a doubled space counts as a word, as in MiniOneRec.
  """
  if not isinstance(raw, str):
    return None, NO_TITLE
  if '<span id' in raw:
    return None, HTML_SPAN
  title = one_line(raw.replace('&quot;', '"').replace('&amp;', '&')).strip(' ').strip('"')
  if len(title) <= 1:
    return None, TOO_SHORT
  if len(title.split(' ')) > MAX_TITLE_WORDS:
    return None, TOO_LONG
  return title, None


def one_line(text: str) -> str:
  """Tabs and line breaks as spaces: a title is one field of the tab-separated info file.

  A departure from MiniOneRec, whose scripts copy such characters into info/NAME.txt, which
  then cannot be read back (one item becomes several lines or fields).
  """
  return _LINE_BREAKING.sub(' ', text)


def clean_text(raw) -> str:
  """A metadata text field for item.json: tags removed, entities unescaped, whitespace collapsed.

  Non-strings are cleaned as their `str()`, so a list-valued 2018 description becomes the text of
  the list (`"['first', 'second']"`), exactly what MiniOneRec's item files (and the embeddings
  computed from them) contain.
  """
  if not raw:
    return ''
  text = html.unescape(_TAG.sub('', str(raw)))
  text = text.replace('&quot;', '"').replace('&amp;', '&')
  return _SPACE.sub(' ', text).strip()


def clean_brand(raw) -> str:
  """2018 `brand`: the scraped 'by\\n' prefix removed."""
  return raw.replace('by\n', '').strip() if isinstance(raw, str) else ''


def join_categories(raw) -> str:
  """A category list (or list of lists) -> 'a,b,c', dropping HTML debris entries."""
  if not raw or not isinstance(raw, list):
    return ''
  if isinstance(raw[0], list):
    raw = [c for group in raw for c in group]
  return ','.join(str(c).strip() for c in raw if '</span>' not in str(c)).strip()
