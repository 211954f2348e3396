/**
 * Renders chat messages into the prompt text a model sees, with Llama 3's chat template, so that chat
 * prompts have realistic token counts and a conversation's later turns share the earlier turns as a
 * prefix (which is what makes multi-turn prefix caching work).
 */

/** One chat message after validation. */
export interface TemplateMessage {
  readonly role: string;
  readonly content: string;
}

/** Renders the conversation and opens the assistant's turn. */
export function renderChatTemplate(messages: readonly TemplateMessage[]): string {
  let text = "<|begin_of_text|>";
  for (const m of messages) {
    text += `<|start_header_id|>${m.role}<|end_header_id|>\n\n${m.content}<|eot_id|>`;
  }
  return `${text}<|start_header_id|>assistant<|end_header_id|>\n\n`;
}
