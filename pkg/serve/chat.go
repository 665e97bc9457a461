package serve

import (
	"strings"

	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// chatFormat renders chat messages into one prompt. Two layouts exist:
//
//   - ChatML, chosen when tokenizer_config.json's chat_template uses
//     <|im_start|>/<|im_end|> and the tokenizer has both tokens (Qwen and
//     many others): "<|im_start|>{role}\n{content}<|im_end|>\n" per message,
//     then "<|im_start|>assistant\n"; <|im_end|> also ends the answer. No
//     default system message is added.
//   - Plain, for every other case (no template, or a Jinja template this
//     package does not interpret): "{role}: {content}\n" per message, then
//     "assistant:". Models trained on raw text (the quickstart's) continue
//     it as text.
type chatFormat struct {
	chatML  bool
	stopIDs []int32 // tokens that end an answer besides EOS
}

// newChatFormat picks the layout for a chat_template and tokenizer.
func newChatFormat(template string, tok *tokenizer.Tokenizer) chatFormat {
	if strings.Contains(template, "<|im_start|>") && strings.Contains(template, "<|im_end|>") && tok != nil {
		_, okStart := tok.TokenToID("<|im_start|>")
		end, okEnd := tok.TokenToID("<|im_end|>")
		if okStart && okEnd {
			return chatFormat{chatML: true, stopIDs: []int32{int32(end)}}
		}
	}
	return chatFormat{}
}

// String names the layout for logs.
func (f chatFormat) String() string {
	if f.chatML {
		return "ChatML (<|im_start|>role ... <|im_end|>, from the tokenizer's chat_template)"
	}
	return `plain ("role: content" lines, then "assistant:")`
}

func (f chatFormat) render(msgs []message) string {
	var b strings.Builder
	for _, m := range msgs {
		if f.chatML {
			b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
		} else {
			b.WriteString(m.Role + ": " + m.Content + "\n")
		}
	}
	if f.chatML {
		b.WriteString("<|im_start|>assistant\n")
	} else {
		b.WriteString("assistant:")
	}
	return b.String()
}
