/**
 * A deterministic stand-in for a BPE tokenizer (the simulator has no model vocabulary).
 *
 * Text is cut into pieces the way GPT-style tokenizers roughly do: a chat-template special token such as
 * `<|eot_id|>` is one piece; otherwise a piece is up to 4 letters, 1 digit, or 1 other symbol, with any
 * whitespace before it attached to its front (" world" -> " worl", "d"). English text averages about
 * 4 characters per token, close to Llama 3's tokenizer. A piece's id is its 32-bit FNV-1a hash, so equal
 * text gives equal ids and a shared text prefix gives a shared token prefix (what prefix caching needs).
 * Concatenating the pieces gives back the text exactly.
 */

const PIECE = /<\|[a-z_]{1,32}\|>|\s*(?:[\p{L}\p{M}]{1,4}|\p{N}|[^\s\p{L}\p{M}\p{N}])|\s+/gu;

/** Splits text into token pieces; joining them gives the text back. */
export function tokenizePieces(text: string): string[] {
  return text.match(PIECE) ?? [];
}

/** The id of one piece. */
export function pieceId(piece: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < piece.length; i++) {
    h = Math.imul(h ^ piece.charCodeAt(i), 0x01000193);
  }
  return h >>> 0;
}

/** Token ids of a text. */
export function tokenize(text: string): number[] {
  return tokenizePieces(text).map(pieceId);
}

/** Counts tokens without keeping them. */
export function countTokens(text: string): number {
  let n = 0;
  PIECE.lastIndex = 0;
  while (PIECE.exec(text) !== null) n++;
  return n;
}
