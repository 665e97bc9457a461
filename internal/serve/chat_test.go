package serve

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// readTemplate returns testdata/chat_templates/NAME.jinja: a real model's
// chat_template as transformers sees it (see testdata/chat_templates/README.md).
func readTemplate(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "chat_templates", name+".jinja"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustChatFormat(t testing.TB, ct ChatTemplate) chatFormat {
	t.Helper()
	f, err := newChatFormat(ct, gpt2(t))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The special tokens of the families' tokenizer_config.json files.
var (
	mixtralTokens  = ChatTemplate{BOSToken: "<s>", EOSToken: "</s>"}
	qwen3Tokens    = ChatTemplate{EOSToken: "<|im_end|>"} // bos_token is null
	olmoeTokens    = ChatTemplate{BOSToken: "<|endoftext|>", EOSToken: "<|endoftext|>"}
	deepseekTokens = ChatTemplate{BOSToken: "<｜begin▁of▁sentence｜>", EOSToken: "<｜end▁of▁sentence｜>"}
)

func withSource(ct ChatTemplate, src string) ChatTemplate {
	ct.Source = src
	return ct
}

// TestChatTemplateFamilies renders system + user + assistant + user with
// each family's real template and add_generation_prompt=True. The expected
// strings are derived by hand from the template text:
//
//   - Mixtral (mistral "v1"): bos_token, then the system message joined to
//     the first user message as " [INST] " + system + "\n\n" + user +
//     " [/INST]"; an assistant turn is " " + content + eos_token; the
//     template ignores add_generation_prompt. llama.cpp's
//     tests/test-chat-template.cpp expects the same layout for this
//     template (TestChatTemplateLlamaCppOutputs).
//   - Qwen3-30B-A3B: the first system message as "<|im_start|>system\n...
//     <|im_end|>\n", every other turn "<|im_start|>role\ncontent<|im_end|>\n"
//     (the assistant turn precedes the last user query, so no <think>
//     block), then "<|im_start|>assistant\n"; enable_thinking is undefined,
//     so no empty think block is added.
//   - OLMoE-1B-7B-0924-Instruct (Tulu): bos_token, "<|system|>\n" /
//     "<|user|>\n" + content + "\n", a non-final assistant turn
//     "<|assistant|>\n" + content + eos_token + "\n", then "<|assistant|>\n"
//     after the last message.
//   - DeepSeek-V3: bos_token, the system prompt as is, "<｜User｜>" + user,
//     "<｜Assistant｜>" + assistant + "<｜end▁of▁sentence｜>", and
//     "<｜Assistant｜>" as the generation prompt; no separator between the
//     system prompt and the first user turn (as litellm's DeepSeek test
//     asserts for the R1 variant of this template).
//   - DeepSeek-V2-Chat: bos_token, system + "\n\n", "User: " + user +
//     "\n\n", "Assistant: " + assistant + eos_token, then "Assistant:".
func TestChatTemplateFamilies(t *testing.T) {
	msgs := []message{
		{Role: "system", Content: "You are a helpful assistant"},
		{Role: "user", Content: "Hello"},
		{Role: "assistant", Content: "Hi there"},
		{Role: "user", Content: "Who are you"},
	}
	for _, tc := range []struct {
		name   string
		tokens ChatTemplate
		want   string
	}{
		{"Mixtral-8x7B-Instruct-v0.1", mixtralTokens,
			"<s> [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]"},
		{"Qwen3-30B-A3B", qwen3Tokens,
			"<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n"},
		{"OLMoE-1B-7B-0924-Instruct", olmoeTokens,
			"<|endoftext|><|system|>\nYou are a helpful assistant\n<|user|>\nHello\n<|assistant|>\nHi there<|endoftext|>\n<|user|>\nWho are you\n<|assistant|>\n"},
		{"DeepSeek-V3", deepseekTokens,
			"<｜begin▁of▁sentence｜>You are a helpful assistant<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜><｜User｜>Who are you<｜Assistant｜>"},
		{"DeepSeek-V2-Chat", deepseekTokens,
			"<｜begin▁of▁sentence｜>You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>User: Who are you\n\nAssistant:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustChatFormat(t, withSource(tc.tokens, readTemplate(t, tc.name)))
			got, err := f.render(msgs)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("rendered\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

// TestChatTemplateLlamaCppOutputs: llama.cpp's tests/test-chat-template.cpp
// renders its six-message conversation with these two templates (bos_token
// "", the eos_token given) and expects exactly these strings (its
// expected_output_jinja / expected_output fields, copied verbatim).
func TestChatTemplateLlamaCppOutputs(t *testing.T) {
	msgs := []message{
		{Role: "system", Content: "You are a helpful assistant"},
		{Role: "user", Content: "Hello"},
		{Role: "assistant", Content: "Hi there"},
		{Role: "user", Content: "Who are you"},
		{Role: "assistant", Content: "   I am an assistant   "},
		{Role: "user", Content: "Another question"},
	}
	for _, tc := range []struct {
		name, eos, want string
	}{
		{"Mixtral-8x7B-Instruct-v0.1", "</s>",
			" [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an assistant   </s> [INST] Another question [/INST]"},
		{"DeepSeek-V2-Chat", "<｜end▁of▁sentence｜>",
			"You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>User: Who are you\n\nAssistant:    I am an assistant   <｜end▁of▁sentence｜>User: Another question\n\nAssistant:"},
	} {
		f := mustChatFormat(t, ChatTemplate{Source: readTemplate(t, tc.name), EOSToken: tc.eos})
		got, err := f.render(msgs)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: rendered\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}

// TestChatTemplateRaiseException: a conversation the template refuses with
// raise_exception gets a 400 carrying the template's own message, over
// HTTP, and never reaches the model.
func TestChatTemplateRaiseException(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{ChatTemplate: withSource(mixtralTokens, readTemplate(t, "Mixtral-8x7B-Instruct-v0.1"))})
	for _, tc := range []struct {
		msgs []map[string]any
		want string
	}{
		{[]map[string]any{{"role": "user", "content": "a"}, {"role": "user", "content": "b"}},
			"After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."},
		{[]map[string]any{{"role": "assistant", "content": "a"}},
			"After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."},
		// A later system message is neither user nor assistant: at an odd
		// position it passes the alternation check and hits the role check;
		// at an even one the alternation check fires first.
		{[]map[string]any{{"role": "user", "content": "a"}, {"role": "system", "content": "b"}},
			"Only user and assistant roles are supported, with the exception of an initial optional system message!"},
		{[]map[string]any{{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "developer", "content": "c"}},
			"After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."},
	} {
		code, raw := ts.post(t, "/v1/chat/completions", map[string]any{"messages": tc.msgs, "max_tokens": 2})
		if code != 400 {
			t.Fatalf("%v: %d %s", tc.msgs, code, raw)
		}
		checkErrorJSON(t, raw, "invalid_request_error", "messages", "")
		if !strings.Contains(string(raw), tc.want) {
			t.Errorf("%v: %s does not carry the template's message %q", tc.msgs, raw, tc.want)
		}
	}
	if s := ts.Stats(); s.Steps != 0 {
		t.Errorf("refused requests ran %d model steps", s.Steps)
	}
}

// TestChatTemplateBOS: a template that writes bos_token yields exactly one
// BOS id at the start of the prompt (the tokenizer adds none of its own),
// and the special tokens it writes become their ids.
func TestChatTemplateBOS(t *testing.T) {
	g := loadGolden(t, "olmoe")
	ts := start(t, FromModel(g.m), Config{ChatTemplate: withSource(olmoeTokens, readTemplate(t, "OLMoE-1B-7B-0924-Instruct"))})
	code, raw := ts.post(t, "/v1/chat/completions", map[string]any{"messages": []map[string]any{{"role": "user", "content": "Hi"}},
		"max_tokens": 2, "temperature": 0, "return_token_ids": true})
	if code != 200 {
		t.Fatalf("%d %s", code, raw)
	}
	c := decode[completion](t, raw)
	tok := gpt2(t)
	bos, _ := tok.TokenToID("<|endoftext|>")
	var want []int32
	for _, id := range tok.Encode("<|user|>\nHi\n<|assistant|>\n") {
		want = append(want, int32(id))
	}
	want = append([]int32{int32(bos)}, want...)
	if !slices.Equal(c.PromptTokenIDs, want) {
		t.Errorf("prompt %v, want one BOS then the turns: %v", c.PromptTokenIDs, want)
	}
}

// TestChatTemplateMalformed: a template that does not compile, or cannot
// render a one-message conversation, fails New (and Check) with the
// engine's reason, at startup rather than per request.
func TestChatTemplateMalformed(t *testing.T) {
	g := loadGolden(t, "mixtral")
	for _, tc := range []struct{ src, want string }{
		{"{% for m in messages %}{{ m.content }}", "chat template"},
		{"{{ messages[0].content | no_such_filter }}", "no_such_filter"},
		{"{% if %}", "chat template"},
	} {
		s, err := New(FromModel(g.m), gpt2(t), Config{ModelName: "golden", ChatTemplate: ChatTemplate{Source: tc.src}})
		if err == nil {
			s.Close()
			t.Errorf("%q: New accepted it", tc.src)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not mention %q", tc.src, err, tc.want)
		}
		if err := (ChatTemplate{Source: tc.src}).Check(); err == nil {
			t.Errorf("%q: Check accepted it", tc.src)
		}
	}
}

// TestParseTokenizerConfig: chat_template as a string or a named list,
// tokens as strings, {"content"} objects or null.
func TestParseTokenizerConfig(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		want       ChatTemplate
		err        string
	}{
		{"strings", `{"chat_template": "{{ bos_token }}", "bos_token": "<s>", "eos_token": "</s>"}`,
			ChatTemplate{Source: "{{ bos_token }}", BOSToken: "<s>", EOSToken: "</s>"}, ""},
		{"objects and null", `{"chat_template": "x", "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "lstrip": false}, "eos_token": null}`,
			ChatTemplate{Source: "x", BOSToken: "<｜begin▁of▁sentence｜>"}, ""},
		{"named list", `{"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}], "eos_token": "<|im_end|>"}`,
			ChatTemplate{Source: "d", EOSToken: "<|im_end|>"}, ""},
		{"no template", `{"eos_token": "</s>"}`, ChatTemplate{EOSToken: "</s>"}, ""},
		{"list without default", `{"chat_template": [{"name": "rag", "template": "r"}]}`, ChatTemplate{}, `no template named "default"`},
		{"wrong type", `{"chat_template": 3}`, ChatTemplate{}, "neither a string nor a list"},
		{"bad token", `{"bos_token": 3}`, ChatTemplate{}, "bos_token"},
		{"not JSON", `{`, ChatTemplate{}, "malformed JSON"},
	} {
		got, err := ParseTokenizerConfig([]byte(tc.json))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// FuzzChatRender: Mixtral's template renders any message text without
// error or panic, inserting it verbatim (the text is data, never template
// code).
func FuzzChatRender(f *testing.F) {
	f.Add("You are a helpful assistant", "Hello", "Hi there", "Who are you")
	f.Add("{{ raise_exception('x') }}", "{% for %}", "</s>", "\x00\xff")
	f.Add("", "", "", "")
	tmpl := mustChatFormat(f, withSource(mixtralTokens, readTemplate(f, "Mixtral-8x7B-Instruct-v0.1")))
	f.Fuzz(func(t *testing.T, system, user1, assistant, user2 string) {
		got, err := tmpl.render([]message{
			{Role: "system", Content: system}, {Role: "user", Content: user1},
			{Role: "assistant", Content: assistant}, {Role: "user", Content: user2},
		})
		if err != nil {
			t.Fatal(err)
		}
		want := "<s> [INST] " + system + "\n\n" + user1 + " [/INST] " + assistant + "</s> [INST] " + user2 + " [/INST]"
		if got != want {
			t.Fatalf("rendered %q, want %q", got, want)
		}
	})
}
