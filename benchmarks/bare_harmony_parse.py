"""The baseline: what a user would write with openai-harmony alone to parse a raw completion to JSON.

Import, load the encoding, encode the text, feed every token to StreamableParser, print the messages as
JSON. The vocabulary folder is given by TIKTOKEN_ENCODINGS_BASE (this machine has no network).
"""

import json
import sys

from openai_harmony import HarmonyEncodingName, Role, StreamableParser, load_harmony_encoding

enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
with open(sys.argv[1], encoding="utf-8") as f:
    text = f.read()
tokens = enc.encode(text, allowed_special="all")
parser = StreamableParser(enc, Role.ASSISTANT)
for token in tokens:
    parser.process(token)
parser.process_eos()
json.dump([m.to_dict() for m in parser.messages], sys.stdout, ensure_ascii=False, indent=2, default=str)
