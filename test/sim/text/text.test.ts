/** The tokenizer approximation, the chat template and output planning (seeds, lengths, stop strings). */
import { describe, expect, it } from "vitest";
import { renderChatTemplate } from "../../../sim/text/chat-template.js";
import { planOutput } from "../../../sim/text/output-plan.js";
import { countTokens, tokenize, tokenizePieces } from "../../../sim/text/tokenizer.js";

describe("tokenizer", () => {
  it("cuts text into pieces that join back to it, about 4 characters each", () => {
    const text = "Hello, world! Tokenizers split 12 words into pieces; ünïcödé too.\n\n  Done.";
    const pieces = tokenizePieces(text);
    expect(pieces.join("")).toBe(text);
    expect(pieces.slice(0, 4)).toEqual(["Hell", "o", ",", " worl"]);
    expect(countTokens(text)).toBe(pieces.length);
    const english = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.";
    const ratio = english.length / countTokens(english);
    expect(ratio).toBeGreaterThan(3);
    expect(ratio).toBeLessThan(5);
  });

  it("keeps chat-template special tokens whole and shared prefixes shared", () => {
    expect(tokenizePieces("<|eot_id|>hi")).toEqual(["<|eot_id|>", "hi"]);
    const a = tokenize("You are a helpful assistant. Question one?");
    const b = tokenize("You are a helpful assistant. Question two?");
    expect(a.slice(0, 8)).toEqual(b.slice(0, 8));
  });

  it("renders a conversation so that the next turn extends the previous prompt", () => {
    const turn1 = renderChatTemplate([{ role: "user", content: "Hi" }]);
    const turn2 = renderChatTemplate([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello" },
      { role: "user", content: "More" },
    ]);
    expect(turn1.endsWith("<|start_header_id|>assistant<|end_header_id|>\n\n")).toBe(true);
    expect(turn2.startsWith(turn1)).toBe(true);
  });
});

describe("planOutput", () => {
  const base = { maxTokens: 50, seed: 42, stop: [], ignoreEos: true, meanOutputTokens: 128 };

  it("gives the same output for the same seed and a different one for another", () => {
    expect(planOutput(base)).toEqual(planOutput(base));
    expect(planOutput({ ...base, seed: 43 }).deltas).not.toEqual(planOutput(base).deltas);
  });

  it("runs to max_tokens with ignore_eos, and re-tokenizes to the same count", () => {
    const plan = planOutput(base);
    expect(plan.deltas).toHaveLength(50);
    expect(plan.finishReason).toBe("length");
    expect(countTokens(plan.deltas.join(""))).toBe(50);
  });

  it("ends by itself before max_tokens with finish reason stop when it can", () => {
    const lengths = Array.from({ length: 200 }, (_, seed) =>
      planOutput({ ...base, seed, ignoreEos: false, maxTokens: 10_000, meanOutputTokens: 20 }),
    );
    for (const p of lengths) expect(p.finishReason).toBe("stop");
    const mean = lengths.reduce((s, p) => s + p.deltas.length, 0) / lengths.length;
    expect(mean).toBeGreaterThan(15);
    expect(mean).toBeLessThan(25);
  });

  it("stops at a stop string and leaves it out of the text", () => {
    const full = planOutput(base).deltas.join("");
    const stop = full.slice(20, 26);
    const plan = planOutput({ ...base, stop: ["never-there", stop] });
    expect(plan.finishReason).toBe("stop");
    expect(plan.stopReason).toBe(stop);
    expect(plan.deltas.join("")).toBe(full.slice(0, full.indexOf(stop)));
    expect(plan.tokenIds.length).toBe(plan.deltas.length);
  });
});
