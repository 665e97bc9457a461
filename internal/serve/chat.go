package serve

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/ardanlabs/jinja"

	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// ChatTemplate is a model's Hugging Face chat template and the special
// tokens its context names, as tokenizer_config.json gives them (see
// ParseTokenizerConfig). The zero value selects the plain format.
type ChatTemplate struct {
	// Source is the Jinja text of chat_template; "" renders chats in the
	// plain format ("role: content" lines, then "assistant:").
	Source string
	// BOSToken and EOSToken are the text of bos_token and eos_token, given
	// to the template as bos_token and eos_token; "" leaves the variable
	// undefined (it renders as ""), as transformers does for a null token.
	BOSToken, EOSToken string
}

// ParseTokenizerConfig reads chat_template, bos_token and eos_token from
// the contents of a tokenizer_config.json. chat_template may be a string
// or a list of {"name", "template"} (the one named "default" is used, as
// transformers does without a template name); a token may be a string, an
// {"content": ...} object or null. A file without chat_template gives a
// ChatTemplate with an empty Source.
func ParseTokenizerConfig(data []byte) (ChatTemplate, error) {
	var cfg struct {
		ChatTemplate json.RawMessage `json:"chat_template"`
		BOS          json.RawMessage `json:"bos_token"`
		EOS          json.RawMessage `json:"eos_token"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return ChatTemplate{}, fmt.Errorf("malformed JSON: %w", err)
	}
	var ct ChatTemplate
	var errs []error
	if !isNullOrEmpty(cfg.ChatTemplate) {
		if json.Unmarshal(cfg.ChatTemplate, &ct.Source) != nil {
			var list []struct {
				Name     string `json:"name"`
				Template string `json:"template"`
			}
			if err := json.Unmarshal(cfg.ChatTemplate, &list); err != nil {
				errs = append(errs, errors.New(`chat_template: neither a string nor a list of {"name", "template"}`))
			}
			var names []string
			for _, t := range list {
				if t.Name == "default" {
					ct.Source = t.Template
				}
				names = append(names, t.Name)
			}
			if ct.Source == "" && len(list) > 0 {
				errs = append(errs, fmt.Errorf("chat_template: no template named \"default\" among %q", names))
			}
		}
	}
	token := func(key string, raw json.RawMessage) string {
		if isNullOrEmpty(raw) {
			return ""
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		var obj struct {
			Content string `json:"content"`
		}
		if json.Unmarshal(raw, &obj) != nil {
			errs = append(errs, fmt.Errorf("%s: neither a string nor {\"content\": ...}", key))
		}
		return obj.Content
	}
	ct.BOSToken = token("bos_token", cfg.BOS)
	ct.EOSToken = token("eos_token", cfg.EOS)
	return ct, errors.Join(errs...)
}

// chatFormat renders chat messages into one prompt, in one of two ways:
//
//   - Template: the model's chat template, rendered as transformers'
//     apply_chat_template(messages, add_generation_prompt=True,
//     tokenize=False) does (Jinja with trim_blocks and lstrip_blocks; the
//     context has messages as {role, content}, add_generation_prompt,
//     bos_token, eos_token, tools = none, raise_exception and
//     strftime_now). The template writes special tokens such as "<s>" or
//     "<|im_start|>" as text; the tokenizer turns them into their ids and
//     adds no BOS of its own. The eos_token, and <|im_end|> when the
//     template uses it, also end the answer.
//   - Plain, without a template: "{role}: {content}\n" per message, then
//     "assistant:". Models trained on raw text (the quickstart's) continue
//     it as text.
type chatFormat struct {
	tmpl    *jinja.Template // nil: plain
	bos     string          // "" : undefined in the template
	eos     string
	stopIDs []int32 // tokens that end an answer besides the model's EOS
}

// probeMessages is the conversation a template must render at startup,
// so that a template this engine cannot run fails there, not per request.
var probeMessages = []message{{Role: "user", Content: "Hello"}}

// Check compiles the template and renders a one-message conversation with
// it, so that a template this engine cannot run fails at startup rather
// than per request. New does the same; Check lets a caller fail before
// loading a model.
func (ct ChatTemplate) Check() error {
	_, err := newChatFormat(ct, nil)
	return err
}

// newChatFormat compiles ct for tok and renders a one-message conversation
// with it, so that a malformed template is an error here.
func newChatFormat(ct ChatTemplate, tok *tokenizer.Tokenizer) (chatFormat, error) {
	if ct.Source == "" {
		return chatFormat{}, nil
	}
	t, err := jinja.Compile(ct.Source)
	if err != nil {
		return chatFormat{}, fmt.Errorf("serve: chat template: %w", err)
	}
	f := chatFormat{tmpl: t, bos: ct.BOSToken, eos: ct.EOSToken}
	if _, err := f.render(probeMessages); err != nil {
		return chatFormat{}, fmt.Errorf("serve: chat template cannot render a one-message conversation: %w", err)
	}
	if tok != nil {
		add := func(s string) {
			if id, ok := tok.TokenToID(s); ok && s != "" {
				f.stopIDs = append(f.stopIDs, int32(id))
			}
		}
		add(ct.EOSToken)
		if strings.Contains(ct.Source, "<|im_end|>") && ct.EOSToken != "<|im_end|>" {
			add("<|im_end|>")
		}
	}
	return f, nil
}

// String names the format for logs.
func (f chatFormat) String() string {
	if f.tmpl != nil {
		return "the model's chat template (tokenizer_config.json's chat_template)"
	}
	return `plain ("role: content" lines, then "assistant:"; no chat_template)`
}

// templateError is an error the template raised with raise_exception(msg):
// the request is at fault (e.g. roles that do not alternate).
type templateError struct{ msg string }

func (e *templateError) Error() string { return e.msg }

// raiseException is the template's raise_exception(msg).
var raiseException = jinja.NewCallable("raise_exception", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
	msg := "raise_exception called"
	switch {
	case len(args) > 0 && args[0].IsString():
		msg = args[0].AsString()
	case len(args) > 0:
		msg = args[0].String()
	}
	return jinja.Undefined(), &templateError{msg: msg}
})

// render returns the prompt for msgs. An error from raise_exception is a
// *templateError; anything else (including a panic inside the engine) is
// the template's or the engine's fault.
func (f chatFormat) render(msgs []message) (out string, err error) {
	if f.tmpl == nil {
		var b strings.Builder
		for _, m := range msgs {
			b.WriteString(m.Role + ": " + m.Content + "\n")
		}
		b.WriteString("assistant:")
		return b.String(), nil
	}
	list := make([]jinja.Value, len(msgs))
	for i, m := range msgs {
		d := jinja.NewDict()
		d.AsDict().Set("role", jinja.NewString(m.Role))
		d.AsDict().Set("content", jinja.NewString(m.Content))
		list[i] = d
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(list),
		"add_generation_prompt": jinja.NewBool(true),
		"tools":                 jinja.None(),
		"documents":             jinja.None(),
		"raise_exception":       raiseException,
	}
	if f.bos != "" {
		data["bos_token"] = jinja.NewString(f.bos)
	}
	if f.eos != "" {
		data["eos_token"] = jinja.NewString(f.eos)
	}
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat template engine panicked: %v", r)
		}
	}()
	return f.tmpl.RenderValues(data)
}

// renderChat is render for a request: a raise_exception is a 400 naming
// the template's message, any other failure a 500.
func (f chatFormat) renderChat(msgs []message) (string, *apiError) {
	text, err := f.render(msgs)
	var te *templateError
	switch {
	case err == nil:
		return text, nil
	case errors.As(err, &te):
		return "", invalid("messages", "the model's chat template refused the messages: %s", te.msg)
	default:
		return "", &apiError{Status: http.StatusInternalServerError, Type: "server_error", Message: "rendering the chat template: " + err.Error()}
	}
}
