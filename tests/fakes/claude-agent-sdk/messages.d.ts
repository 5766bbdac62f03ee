// Excerpt of @anthropic-ai/sdk 1.15.0, resources/beta/messages/messages.d.ts and
// resources/messages/messages.d.ts (comments removed).

export interface BetaMessage {
    id: string;
    container: BetaContainer | null;
    content: Array<BetaContentBlock>;
    context_management: BetaContextManagementResponse | null;
    diagnostics: BetaDiagnostics | null;
    model: MessagesAPI.Model;
    role: 'assistant';
    stop_details: BetaRefusalStopDetails | null;
    stop_reason: BetaStopReason | null;
    stop_sequence: string | null;
    type: 'message';
    usage: BetaUsage;
    input_transformations?: Array<BetaInputTransformation> | null;
}

export type BetaContentBlock = BetaTextBlock | BetaThinkingBlock | BetaRedactedThinkingBlock | BetaToolUseBlock | BetaServerToolUseBlock | BetaWebSearchToolResultBlock | BetaWebFetchToolResultBlock | BetaAdvisorToolResultBlock | BetaCodeExecutionToolResultBlock | BetaBashCodeExecutionToolResultBlock | BetaTextEditorCodeExecutionToolResultBlock | BetaToolSearchToolResultBlock | BetaMCPToolUseBlock | BetaMCPToolResultBlock | BetaContainerUploadBlock | BetaCompactionBlock | BetaFallbackBlock | BetaMCPToolListingBlock;

export interface BetaTextBlock {
    citations: Array<BetaTextCitation> | null;
    text: string;
    type: 'text';
}

export interface BetaThinkingBlock {
    signature: string;
    thinking: string;
    type: 'thinking';
}

export interface BetaToolUseBlock {
    id: string;
    input: unknown;
    name: string;
    type: 'tool_use';
    caller?: BetaDirectCaller | BetaServerToolCaller | BetaServerToolCaller20260120;
    toolset_name?: string | null;
}

export interface BetaUsage {
    cache_creation: BetaCacheCreation | null;
    cache_creation_input_tokens: number | null;
    cache_read_input_tokens: number | null;
    fallback_credit: BetaFallbackCreditUsage | null;
    inference_geo: string | null;
    input_tokens: number;
    iterations: BetaIterationsUsage | null;
    output_tokens: number;
    output_tokens_details: BetaOutputTokensDetails | null;
    server_tool_use: BetaServerToolUsage | null;
    service_tier: 'standard' | 'priority' | 'batch' | null;
    speed: 'standard' | 'fast' | null;
}

export type MessageParam = UserMessageParam | AssistantMessageParam | SystemMessageParam;

export interface UserMessageParam {
    content: MessageContentParam;
    role: 'user';
}

export type MessageContentParam = string | Array<ContentBlockParam>;

export type ContentBlockParam = TextBlockParam | ImageBlockParam | DocumentBlockParam | SearchResultBlockParam | ThinkingBlockParam | RedactedThinkingBlockParam | ToolUseBlockParam | ToolResultBlockParam | ServerToolUseBlockParam | WebSearchToolResultBlockParam | WebFetchToolResultBlockParam | CodeExecutionToolResultBlockParam | BashCodeExecutionToolResultBlockParam | TextEditorCodeExecutionToolResultBlockParam | ToolSearchToolResultBlockParam | ContainerUploadBlockParam;

export interface TextBlockParam {
    text: string;
    type: 'text';
    cache_control?: CacheControlEphemeral | null;
    citations?: Array<TextCitationParam> | null;
}

export interface ToolResultBlockParam {
    tool_use_id: string;
    type: 'tool_result';
    cache_control?: CacheControlEphemeral | null;
    content?: string | Array<TextBlockParam | ImageBlockParam | SearchResultBlockParam | DocumentBlockParam | ToolReferenceBlockParam | BrowserStateBlockParam>;
    is_error?: boolean;
    toolset_name?: string | null;
}
