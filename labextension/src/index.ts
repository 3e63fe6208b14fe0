// gptoss-lab's JupyterLab extension: a MIME renderer for saved gpt-oss turns
// (application/vnd.gptoss-lab.transcript+json), ranked above text/html, so a notebook opened without a
// kernel shows every channel of every turn, interactively.

import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { renderTranscript } from './render';
import { ITranscript, MIME_TYPE } from './transcript';

export class TranscriptRenderer extends Widget implements IRenderMime.IRenderer {
  constructor(private options: IRenderMime.IRendererOptions) {
    super();
    this.addClass('jp-gptoss-lab-transcript');
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[MIME_TYPE] as unknown as ITranscript;
    const { markdownParser, sanitizer } = this.options;
    const md = async (text: string): Promise<string> => {
      if (!markdownParser) throw new Error('no Markdown parser');
      return sanitizer.sanitize(await markdownParser.render(text));
    };
    const meta = (model.metadata[MIME_TYPE] || {}) as { open_messages?: number[] };
    renderTranscript(this.node, data, md, meta.open_messages || []);
  }
}

const extension: IRenderMime.IExtension = {
  id: 'gptoss-lab:transcript',
  rendererFactory: {
    safe: true,
    mimeTypes: [MIME_TYPE],
    createRenderer: options => new TranscriptRenderer(options)
  },
  rank: 40, // text/html is 50: a lower rank is preferred
  dataType: 'json'
};

export default extension;
